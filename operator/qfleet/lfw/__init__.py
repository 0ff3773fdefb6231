"""Face-verification data (insightface lfw.bin, LFW pairs.txt) and the LFW protocol."""
