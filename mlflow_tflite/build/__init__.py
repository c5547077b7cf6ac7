"""Build stage: open a source and its data, adapt the model (resize, prune, quantization-aware
training), convert it (TFLiteConverter) or quantize its float flatbuffer (LiteRT Quantizer),
and search mixed precision. Stages take values and return values (models, flatbuffer bytes)."""
