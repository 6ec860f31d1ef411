"""Converters between brainjax artifacts and the original PyTorch repositories' checkpoints (command line).

`python -m brainjax.convert.mbm ...` imports MinD-Vis / MindVideo checkpoints as brainjax
artifacts and exports them back. The weight-mapping machinery they use is `brainjax.weights`;
each model's own table lives in its model file.
"""
