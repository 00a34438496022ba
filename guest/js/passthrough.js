// Forwards every notification unchanged.
export const handler = {
  onNotify(_n) {
    return { tag: 'forward' };
  },
};
