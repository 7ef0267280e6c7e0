"""cortex_neuron: the per-host daemon that loads models and serves them to the gateway."""
