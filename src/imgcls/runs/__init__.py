"""What a run writes and reads back: the run folder (``folder``), the checkpoint file
(``checkpoint``) and what it records (``record``), the one-writer lock (``lock``), results.csv and
curves.png (``files``), and the repair of a killed run's records (``repair``)."""
