"""The parts of train_fcl.py: its flags (``flags``: declaration, default, bounds and help in one place; YAML configs),
the checks run before any work (``checks``), building the run (``build``), the step's plumbing (``steps``), saved
states (``states``, ``state_files``, ``rng``), the run folder's lock (``lock``), the summary and the best epoch
(``summary``) and resuming (``resume``)."""
