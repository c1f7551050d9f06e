"""Models: the paper's VAE and U-Net denoiser, a true DDPM/DDIM, and the latent hybrid.

`lungkit.models.registry` names them (`MODELS`) and loads saved ones (`load_model`).
"""
