// Messages per minute, from the deltas of two ever-growing totals sampled every few seconds.
// Keeps the last 60 minutes in memory (nothing is stored) and draws grouped bars on a canvas.

export const MINUTES = 60;

export class MinuteChart {
  constructor(canvas) {
    this.canvas = canvas;
    this.last = null;          // the previous sample: {sent, received}
    this.buckets = new Map();  // minute number (epoch ms / 60000) -> {sent, received}
  }

  reset() {
    this.last = null;
    this.buckets.clear();
  }

  // Add a sample of the totals taken at `now` (ms); return this minute's counts so far.
  // The first sample is only a baseline; a total that went down (a wiped database) adds nothing.
  sample(totalSent, totalReceived, now) {
    const minute = Math.floor(now / 60000);
    if (this.last !== null) {
      const bucket = this.buckets.get(minute) || { sent: 0, received: 0 };
      bucket.sent += Math.max(0, totalSent - this.last.sent);
      bucket.received += Math.max(0, totalReceived - this.last.received);
      this.buckets.set(minute, bucket);
    }
    this.last = { sent: totalSent, received: totalReceived };
    for (const key of this.buckets.keys()) {
      if (key <= minute - MINUTES) this.buckets.delete(key);
    }
    return this.buckets.get(minute) || { sent: 0, received: 0 };
  }

  draw(now = Date.now()) {
    const canvas = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth, height = canvas.clientHeight;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const css = getComputedStyle(document.documentElement);
    const colors = { sent: css.getPropertyValue("--sent").trim(), received: css.getPropertyValue("--received").trim() };

    const nowMinute = Math.floor(now / 60000);
    const series = [];
    for (let i = MINUTES - 1; i >= 0; i--) {
      series.push({ minute: nowMinute - i, ...(this.buckets.get(nowMinute - i) || { sent: 0, received: 0 }) });
    }
    // What the chart shows, for tests and for anyone reading the DOM.
    canvas.dataset.sent = String(series.reduce((sum, p) => sum + p.sent, 0));
    canvas.dataset.received = String(series.reduce((sum, p) => sum + p.received, 0));
    const top = niceMax(Math.max(0, ...series.map((p) => Math.max(p.sent, p.received))));
    const left = 40, right = 8, topPad = 8, bottom = 22;
    const plotW = width - left - right, plotH = height - topPad - bottom;

    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = "#6b7685";
    ctx.strokeStyle = "#e3e7ed";
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let g = 0; g <= 4; g++) {
      const y = Math.round(topPad + plotH - (plotH * g) / 4) + 0.5;
      ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(width - right, y); ctx.stroke();
      ctx.fillText(String((top * g) / 4), left - 6, y);
    }

    const slot = plotW / MINUTES;
    const barW = Math.max(1, slot / 2 - 1);
    ctx.textBaseline = "top";
    series.forEach((point, i) => {
      const x = left + i * slot;
      const hs = (point.sent / top) * plotH, hr = (point.received / top) * plotH;
      ctx.fillStyle = colors.sent;
      ctx.fillRect(x + 1, topPad + plotH - hs, barW, hs);
      ctx.fillStyle = colors.received;
      ctx.fillRect(x + 1 + barW, topPad + plotH - hr, barW, hr);
      if ((MINUTES - 1 - i) % 10 === 0) {
        const last = i === MINUTES - 1;
        const label = last ? "now"
          : new Date(point.minute * 60000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
        ctx.fillStyle = "#6b7685";
        ctx.textAlign = last ? "right" : "center";
        ctx.fillText(label, last ? width - right : x + slot / 2, height - bottom + 6);
      }
    });
  }
}

// The top of the y axis: four gridline steps of 1, 2 or 5 times a power of ten (at least 1).
export function niceMax(value) {
  const raw = Math.max(4, value) / 4;
  const power = Math.pow(10, Math.floor(Math.log10(raw)));
  for (const m of [1, 2, 5, 10]) if (m * power >= raw) return 4 * m * power;
  return 40 * power;
}
