"""The texts of bench/run.sh's embedding rows: 1000 short English sentences (about 14
tokens each for a BERT vocabulary), seeded, printed as one JSON array."""

import json
import random

random.seed(7)
SUBJECTS = ["A man", "The woman", "A child", "Two dogs", "The old teacher", "My neighbour",
            "A small bird", "The engineer", "Our team", "The river"]
VERBS = ["is eating", "was reading", "will paint", "likes", "is carrying", "watched",
         "repaired", "is playing with", "found", "described"]
OBJECTS = ["a piece of bread", "an old map of the city", "the blue bicycle",
           "a long letter from home", "three red apples", "the broken window",
           "a song about the sea", "the new train station", "a box of tools", "the quiet garden"]
ENDINGS = ["in the morning.", "after lunch.", "near the market.", "before the storm arrived.",
           "with great care.", "on a sunny day.", "while it rained.", "for the first time.",
           "at the edge of town.", "without a word."]
print(json.dumps([
    f"{random.choice(SUBJECTS)} {random.choice(VERBS)} {random.choice(OBJECTS)} {random.choice(ENDINGS)}"
    for _ in range(1000)
]))
