"""WebDataset tar shards -> decoded, preprocessed images; every sample either yields an image or a reject."""
