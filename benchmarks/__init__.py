"""cebench stage package."""
