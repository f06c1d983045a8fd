"""Models: VGG builders for every backend, ImageNet weight loading, conversion between frameworks."""
