"""Write demo_data.jsonl: 120 short-answer chats (synthetic, made here, no licence attached), the data of demo.yaml.

Long prompts (a system prompt and an instruction), short completions (a word, a number, a date): the regime where
prompt loss weight matters most (Huerta-Enochian & Ko 2024). Six task families, shuffled with a fixed seed, so the
held-out rows (the last 12) mix them. Run: python assets/experiments/make_demo_data.py
"""

import json
import random
from pathlib import Path

SYSTEM = ("You are a terse assistant inside a spreadsheet tool. Answer with the shortest correct answer: no "
          "explanation, no greeting, end with a period.")
CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin"),
            ("Canada", "Ottawa"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Norway", "Oslo"),
            ("Greece", "Athens"), ("Chile", "Santiago"), ("Poland", "Warsaw"), ("Austria", "Vienna"),
            ("Portugal", "Lisbon"), ("Ireland", "Dublin"), ("Sweden", "Stockholm"), ("Cuba", "Havana"),
            ("Thailand", "Bangkok"), ("Vietnam", "Hanoi")]
OPPOSITES = [("hot", "cold"), ("early", "late"), ("empty", "full"), ("heavy", "light"), ("wide", "narrow"),
             ("loud", "quiet"), ("rough", "smooth"), ("cheap", "expensive"), ("ancient", "modern"), ("wet", "dry"),
             ("tall", "short"), ("victory", "defeat"), ("accept", "refuse"), ("arrive", "depart"), ("buy", "sell"),
             ("open", "closed"), ("strong", "weak"), ("begin", "end"), ("inside", "outside"), ("above", "below")]
PLURALS = [("mouse", "mice"), ("child", "children"), ("goose", "geese"), ("tooth", "teeth"), ("foot", "feet"),
           ("man", "men"), ("woman", "women"), ("cactus", "cacti"), ("knife", "knives"), ("leaf", "leaves"),
           ("wolf", "wolves"), ("city", "cities"), ("box", "boxes"), ("ox", "oxen"), ("crisis", "crises"),
           ("person", "people"), ("sheep", "sheep"), ("fish", "fish"), ("potato", "potatoes"), ("half", "halves")]
REVIEWS = [("The battery died after a day and support never answered.", "negative"),
           ("Setup took two minutes and it has worked flawlessly since.", "positive"),
           ("Arrived broken, and the replacement was broken too.", "negative"),
           ("Best purchase this year: quiet, fast and well made.", "positive"),
           ("The screen scratches if you look at it.", "negative"),
           ("My kids love it and it survived a fall down the stairs.", "positive"),
           ("Overpriced for what it does, and the app keeps crashing.", "negative"),
           ("Comfortable, warm, and the colour is exactly as pictured.", "positive"),
           ("It stopped charging after a week.", "negative"),
           ("Friendly staff and the food came out hot and fast.", "positive"),
           ("The instructions were missing half the steps.", "negative"),
           ("Sturdy, simple, and it does exactly one thing well.", "positive"),
           ("Loud fan, weak suction, returned it.", "negative"),
           ("Great value: I bought a second one for my office.", "positive"),
           ("The strap broke on the first day.", "negative"),
           ("Crisp sound and the battery lasts all week.", "positive"),
           ("Customer service hung up on me twice.", "negative"),
           ("Fits perfectly and looks even better in person.", "positive"),
           ("Smells of chemicals even after washing.", "negative"),
           ("Light, fast, and the keyboard is a joy.", "positive")]


def rows(rng: random.Random) -> list[dict]:
    out = []
    for country, city in CAPITALS:
        out.append((f"What is the capital of {country}? Reply with the city name only.", f"{city}."))
    for word, opposite in OPPOSITES:
        out.append((f"Give the opposite of the word '{word}'. One word.", f"{opposite.capitalize()}."))
    for word, plural in PLURALS:
        out.append((f"What is the plural of '{word}'?", f"{plural.capitalize()}."))
    for review, label in REVIEWS:
        out.append((f"Classify the sentiment of this product review as positive or negative.\n\nReview: {review}",
                    f"{label.capitalize()}."))
    for _ in range(20):
        a, b = rng.randint(11, 89), rng.randint(11, 89)
        out.append((f"Compute {a} + {b}. Give the number only.", f"{a + b}."))
    for _ in range(20):
        y, m, d = rng.randint(1990, 2030), rng.randint(1, 12), rng.randint(1, 28)
        out.append((f"Rewrite the date {y}-{m:02d}-{d:02d} in the format DD/MM/YYYY.", f"{d:02d}/{m:02d}/{y}."))
    rng.shuffle(out)
    return [{"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q},
                          {"role": "assistant", "content": a}]} for q, a in out]


if __name__ == "__main__":
    path = Path(__file__).with_name("demo_data.jsonl")
    data = rows(random.Random(14))
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in data))
    print(f"wrote {len(data)} rows to {path}")
