"""Data: CT-RATE readers and CSV tables, volume file formats, voxel transforms, the training/evaluation loader."""
