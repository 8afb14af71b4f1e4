"""An enumerable toy world in which pi_ref, pi_BoN and any trained policy are known exactly."""
