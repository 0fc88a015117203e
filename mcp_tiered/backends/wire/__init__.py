"""The HTTP formats the remote engines speak: streaming reads, OpenAI and llama.cpp APIs, chat text."""
