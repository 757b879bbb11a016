"""Code the tests share: tiny models and policies, servers, databases, crash and concurrency drivers."""
