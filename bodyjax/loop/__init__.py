"""Orchestration: the deform-and-learn loop, its epochs, checkpoints, reporting and the experiment.

Layer: orchestration. Modules: :mod:`~bodyjax.loop.deform_and_learn` (the rounds as explicit state),
:mod:`~bodyjax.loop.epochs` (the one epoch loop and the batches it reads),
:mod:`~bodyjax.loop.checkpoints`, :mod:`~bodyjax.loop.compilation_cache`,
:mod:`~bodyjax.loop.reporting`, :mod:`~bodyjax.loop.pictures`, :mod:`~bodyjax.loop.experiment`
(config in, run out).
"""
