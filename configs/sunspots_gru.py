"""GRU one-year-ahead forecast of yearly sunspot numbers, against an AR(9) baseline.

jaxdl-train --config=configs/sunspots_gru.py --workdir=runs/sunspots_gru

The same data, windows and training as configs/sunspots_lstm.py (see there for
lookback 9 and horizon 1), with a GRU cell instead of the LSTM's.
"""

import ml_collections

from configs import sunspots_lstm


def get_config() -> ml_collections.ConfigDict:
    """One GRU layer of 32 units, last hidden state -> one value; Adam 1e-2."""
    config = sunspots_lstm.get_config()
    config.model.name = "gru"
    return config
