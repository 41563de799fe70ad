"""Detection (Fast R-CNN on precomputed proposals): the fourth task of `cebench transfer`."""
