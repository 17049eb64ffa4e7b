"""The model: architecture configs, the vision and text towers, the CLIP module, its loss, weight loading."""
