"""The pure math of vBoN: tensors in, tensors out; no Ray, no I/O."""
