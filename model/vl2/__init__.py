"""DeepSeek-VL2 in plain PyTorch: config, checkpoint loader, vision tower, projector, DeepSeekMoE language model,
batched generation. Written from the official release's behaviour; no transformers model classes, no hub."""
