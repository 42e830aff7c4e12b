"""InterActHuman model package.

Modules (import the one you need; this package file imports nothing heavy):
    model.config        InterActHumanConfig, named configs (get_config)
    model.interacthuman InterActHumanModel (Wan2.1 DiT + reference injection, gated audio, mask head), loading
    model.losses        flow matching, focal mask loss, mask targets at token resolution
    model.encoders      Wan VAE, UMT5 text and wav2vec2 audio encoder wrappers
    model.synthetic     synthetic two-blob task and the mask-head learning loop (tests, bench)
"""
