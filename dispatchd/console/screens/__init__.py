"""The console's screens, one a module (the two message views share one).

- `main`: provider health, queue, throughput and the live traffic log (the default screen).
- `message`: one message, its history and attempts; and the messages to one number.
- `confirm`, `prompt`: the yes/no and one-value dialogs; `help`: the key list.
"""
