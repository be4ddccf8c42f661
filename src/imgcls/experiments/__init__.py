"""Experiments over many training runs: stratified k-fold cross-validation, repeats over seeds
and hyperparameter search. Each run is an ordinary ``imgcls train`` run in a folder of its own
under one experiment folder; this package plans the runs and summarises them."""
