"""Beginnings of movie reviews, written for vbon, for the sentiment task and the tiny tokenizer.

Openings combine a reviewer's lead-in with a film description; they stop before the verdict, so a
policy can continue them either way. 16 lead-ins x 16 films = 256 distinct prompts.
"""

from __future__ import annotations

import random

LEAD_INS = [
    "I went into {film} with no expectations, and",
    "My friends dragged me to see {film} last night, and honestly",
    "After all the hype around {film}, I have to say that",
    "I watched {film} twice this week because",
    "The first twenty minutes of {film} made me think that",
    "Having read the book before seeing {film}, I felt that",
    "On paper, {film} sounds like a sure thing, but",
    "I rented {film} on a rainy Sunday and",
    "Critics have been arguing about {film} for months, and in my opinion",
    "My kids begged me to take them to {film}, and to my surprise",
    "The director's new film, {film}, is",
    "I could not stop thinking about {film} after the credits, because",
    "Ten years from now, people will remember {film} as",
    "The trailer for {film} promised a lot, and",
    "Walking out of the cinema after {film}, I realised that",
    "Let me be clear about {film}:",
]

FILMS = [
    "this slow-burning space western",
    "the new family comedy about a runaway dog",
    "this three-hour historical epic",
    "the low-budget horror film set in a lighthouse",
    "this remake of a classic musical",
    "the quiet drama about two estranged sisters",
    "this heist thriller starring a famous pop singer",
    "the animated film about a robot who learns to paint",
    "this courtroom drama based on a true story",
    "the superhero sequel everyone has been talking about",
    "this French romance set in a bakery",
    "the documentary about deep-sea fishermen",
    "this black-and-white war film",
    "the teen comedy about a chaotic school trip",
    "this science fiction film about time loops",
    "the biopic of a forgotten jazz pianist",
]

_VERDICTS = [
    "it was a wonderful, moving experience from start to finish.",
    "it was one of the most boring films I have ever sat through.",
    "the acting was superb and the music was beautiful.",
    "the plot made no sense and the dialogue was painful.",
    "I laughed, I cried, and I would happily watch it again.",
    "I regret every minute and every dollar I spent on it.",
    "the camera work is stunning, even when the story drags.",
    "it is a mess, but a charming and heartfelt mess.",
    "the ending was brilliant and completely earned.",
    "the characters were flat and the jokes fell apart.",
    "it is a great film with a terrible title.",
    "nothing about it works, except the lovely soundtrack.",
]


def review_openings() -> list[str]:
    """All 256 openings, in a fixed order."""
    return [lead.format(film=film) for lead in LEAD_INS for film in FILMS]


def corpus(seed: int = 0, size: int = 2000) -> list[str]:
    """Whole short reviews (opening plus verdict) to train the tiny tokenizer and model on."""
    rng = random.Random(seed)
    openings = review_openings()
    return [f"{rng.choice(openings)} {rng.choice(_VERDICTS)}" for _ in range(size)]
