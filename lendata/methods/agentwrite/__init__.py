"""AgentWrite (LongWriter): plan a long answer as paragraphs with word counts, then write them, all samples at
once (plan_and_write.py: targets and plans; writing.py: the steps); the recipe contract in method.py."""

from lendata.methods.agentwrite.method import METHOD

__all__ = ["METHOD"]
