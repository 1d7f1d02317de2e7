"""The producer under faults: Redis down or hung, crashes, forks, threads, asyncio."""
