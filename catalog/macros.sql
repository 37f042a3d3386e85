-- SQL macros defined in every `lendata query` session (lendata/catalog.py runs each statement here before
-- the connection is locked down). Counting agrees with lendata's Python: `words` splits on whitespace.

-- whitespace words of a text
CREATE MACRO words(s) AS len(regexp_extract_all(s, '\S+'));

-- the last assistant turn of a chat `messages` column (LongWriter-6k shape)
CREATE MACRO assistant(messages) AS list_filter(messages, lambda m: m.role = 'assistant')[-1].content;

-- the first user turn of a chat `messages` column
CREATE MACRO prompt(messages) AS list_filter(messages, lambda m: m.role = 'user')[1].content;

-- the lower edge of a histogram bin of `width`
CREATE MACRO bin(x, width) AS (x // width) * width;
