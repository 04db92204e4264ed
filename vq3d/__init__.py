"""vq3d: a PyTorch implementation of VQ3D (Sargent et al.), a 3D-aware generative model
trained from 2D image collections: a vector-quantized autoencoder with a triplane NeRF
decoder (Stage 1) and an autoregressive transformer over its tokens (Stage 2)."""

__version__ = "0.1.0"
