"""collect: send prompts to a teacher chat model through the openai client."""
