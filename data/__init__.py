"""Data: dataset loaders (datasets/), records, samplers, transforms and loader building."""
