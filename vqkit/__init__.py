"""vqkit: a multi-modal VQ-VAE toolkit."""
