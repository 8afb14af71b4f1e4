"""Ray Serve: an autoscaled OpenAI-compatible endpoint for the trained policy, or BoN beside it."""
