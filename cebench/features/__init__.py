"""Shared feature tools: our HOG (torch), the FAISS index wrapper, the one no-grad extractor."""

from .extract import (
           Features,
           extract_features,
           load_features,
           pool_features,
           save_features,
)
from .hog import HOGExtractor, hog, hog_output_dim
from .index import FeatureIndex, brute_force_search, faiss_gpu_available

__all__ = ["Features", "extract_features", "load_features", "pool_features", "save_features",
           "HOGExtractor", "hog", "hog_output_dim", "FeatureIndex", "brute_force_search",
           "faiss_gpu_available"]
