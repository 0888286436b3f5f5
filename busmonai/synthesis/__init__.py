"""Masks -> prompts -> diffusion sampling -> labeled synthetic datasets on disk."""
