"""Classic anonymization baselines (blur, pixelate, mask, noise) with the shared Anonymizer interface."""
