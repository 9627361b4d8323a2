"""A collator file without make_collator (the class is there, the factory is not)."""


class Collator:
    def __call__(self, features):
        return {"labels": [f["input_ids"] for f in features]}
