// tetrixctl pull IMAGE: a progress bar per layer on a terminal, JSON lines with --output json, the digest last.
import type { Clients } from './client';
import type { PullImageEvent__Output } from '../generated/tetrix/agent/v1/PullImageEvent';
import type { LayerProgress__Output } from '../generated/tetrix/agent/v1/LayerProgress';

const BAR = 30;

function bar(p: LayerProgress__Output): string {
  const total = Number(p.bytesTotal);
  const done = Number(p.bytesDone);
  const filled = total > 0 ? Math.round((done / total) * BAR) : BAR;
  const what = p.cached ? 'cached' : `${mib(done)}/${mib(total)} MiB`;
  return `${p.digest.slice(7, 19)} [${'#'.repeat(filled)}${' '.repeat(BAR - filled)}] ${what}`;
}

const mib = (n: number): string => (n / 1048576).toFixed(1);

export function pull(c: Clients, image: string, json: boolean): Promise<number> {
  const tty = !json && process.stdout.isTTY === true;
  const layers = new Map<number, LayerProgress__Output>();
  let drawn = 0;
  const redraw = (): void => {
    if (!tty) return;
    if (drawn > 0) process.stdout.write(`\x1b[${drawn}A`);
    const lines = [...layers.entries()].sort(([a], [b]) => a - b).map(([, p]) => `\x1b[2K${bar(p)}\n`);
    process.stdout.write(lines.join(''));
    drawn = lines.length;
  };
  return new Promise((resolve, reject) => {
    const stream = c.images.PullImage({ image });
    stream.on('data', (ev: PullImageEvent__Output) => {
      if (json) return void process.stdout.write(`${JSON.stringify(ev.layer ? { layer: ev.layer } : { image: ev.image })}\n`);
      if (ev.layer) {
        const first = !layers.has(ev.layer.index);
        layers.set(ev.layer.index, ev.layer);
        if (tty) redraw();
        else if (first || Number(ev.layer.bytesDone) === Number(ev.layer.bytesTotal)) process.stdout.write(`${bar(ev.layer)}\n`);
      } else if (ev.image) {
        process.stdout.write(`${ev.image.references[0] ?? image}: ${ev.image.digest} (${ev.image.layers} layers, ${mib(Number(ev.image.size))} MiB)\n`);
      }
    });
    stream.on('error', reject);
    stream.on('end', () => resolve(0));
    process.once('SIGINT', () => stream.cancel());
  });
}
