"""Models: the paper's VAE and U-Net denoiser, a true DDPM/DDIM, and the latent hybrid."""
