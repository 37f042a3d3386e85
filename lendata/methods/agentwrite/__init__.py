"""AgentWrite (LongWriter): plan a long answer as paragraphs with word counts, then write them in rounds
(plan_and_write.py); the recipe contract in method.py."""

from lendata.methods.agentwrite.method import METHOD

__all__ = ["METHOD"]
