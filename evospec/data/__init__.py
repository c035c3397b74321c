"""Text and tokens: corpus layout and sources, the corpus build, Qwen's tokenizer, coverage, teacher-forced replay of real text."""
