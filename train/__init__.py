"""Model assembly, data, templates, two-stage training, evaluation and ablation (no CLI imports here)."""
