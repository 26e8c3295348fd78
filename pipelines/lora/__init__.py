"""LoRA files: discovery and family detection (`files`), prompt tags (`tags`). The hook is `pipelines.hooks.lora`."""
