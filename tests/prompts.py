"""Short chat prompts shared by the real-model tests."""

from engine.model_loader import LoadedModel

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers.",
    "Explain photosynthesis in one sentence to a child who is five years old.",
    "Translate 'good morning' into Spanish.",
    "What is 12 times 12?",
    "Name a famous painting by Leonardo da Vinci and say where it hangs today.",
    "Why is the sky blue?",
    "Give me a synonym for happy.",
    "How many legs does a spider have?",
    "What is the boiling point of water?",
    "Suggest a name for a cat.",
    "What does a bee make?",
    "Describe a rainbow in five words.",
    "Who wrote Romeo and Juliet?",
    "What is the opposite of cold?",
]


def chat_ids(loaded: LoadedModel, question: str, system: str | None = None) -> list[int]:
    """The token ids of a one-turn chat, ready for the assistant's answer."""
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": question}
    ]
    return loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
