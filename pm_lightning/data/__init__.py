"""Data: serpentine grids, the synthetic corpus, WebDataset shards and the DataModule."""
