"""The report: the paper's dataset assessments on the result, as one self-contained HTML page."""
