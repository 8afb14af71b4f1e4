"""Text that the project authors itself: movie-review openings and a small corpus."""
