"""LSReGen: backward guidance and latent inversion.

Pure maths, plain torch, never importing ComfyUI: backward.py (the guidance step), trajectory.py (the reference
latents and their alignment), inversion.py (Euler/DDIM inversion). Host adapters, the only modules here that
import ComfyUI, are named comfy_*.py: comfy_sampling.py (the guided KSAMPLER and the KSampler entry point),
comfy_inversion.py (inversion as a KSAMPLER) and comfy_gligen.py (the GLIGEN layout prior).
"""
