"""What training, evaluation and publishing share: the run folder's contract (``folder``: its names, what
resolved.yaml holds, which settings a resume may change), the exported model and its provenance (``export``),
building a model from any spec (``model_io``), crash-safe writes (``atomic``), the one-line refusal every command
gives (``cli``) and the one way correct predictions are counted (``metrics``)."""
