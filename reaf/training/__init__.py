"""Training: run settings (the flag parser), the run, the step and epoch, optimiser, train state, run logging."""
