"""Frozen encoders' features of a dataset's stimuli, computed once and cached on disk.

`clip_cache`: CLIP text / image embeddings and caption hidden states per stimulus TR;
`vae_cache`: the VAE posteriors of every TR's clip. Stages (clip_embed, align, the video
stages, evaluate) call these instead of running frozen towers inside training steps.
"""
