"""Training for the BatchNorm papers. Importing this package has no side effects: no data is
downloaded and nothing trains until an experiment's ``run`` is called."""
